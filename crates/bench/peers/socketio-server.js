// The peer server of `cargo xtask bench peers`: socket.io 4 fanning one message out to every connected client
// (all in one room), as a Node real-time server would push a board change. `POST /emit` emits its JSON body as a
// `change` event; the benchmark's clients speak Engine.IO v4 over WebSocket. Prints `listening on PORT`.
const http = require('http');
const { Server } = require('socket.io');

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/emit') {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      io.to('board').emit('change', JSON.parse(body));
      res.end('ok');
    });
    return;
  }
  res.statusCode = 404;
  res.end();
});
const io = new Server(server, { transports: ['websocket'], perMessageDeflate: false, pingInterval: 25000 });
io.on('connection', (socket) => socket.join('board'));
server.maxConnections = 1000000;
server.listen(0, '127.0.0.1', () => console.log(`listening on ${server.address().port}`));
