// Starts the app: loads the wasm module (a file of its own, so the Content-Security-Policy needs no inline script).
import init from '/pkg/syncline_app.js';
init({ module_or_path: '/pkg/syncline_app_bg.wasm' });
