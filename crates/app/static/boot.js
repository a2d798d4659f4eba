// Starts the app: loads the wasm module (a file of its own, so the Content-Security-Policy needs no inline script).
// Paths are relative: the build serves this file beside the module, under a content-hashed directory.
import init from './syncline_app.js';
init({ module_or_path: new URL('./syncline_app_bg.wasm', import.meta.url) });
