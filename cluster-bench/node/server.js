// The bench's Node peer: the classic Node cluster example's `server.js` (an HTTP server that
// burns `for (let i = 0; i < 1e7; i++);` per request), run two ways with the same handlers:
//
//   node server.js cluster N PORT   under Node's own `cluster` module: a primary forks N
//                                   workers that listen on 127.0.0.1:PORT. Scheduling is
//                                   SCHED_RR, Node's default on Linux: the primary accepts
//                                   every connection and hands it to a worker in turn.
//                                   Once all N listen it prints {"listening":[pid,…]}.
//   node server.js fd3              one worker of `cluster run -- node server.js fd3`: it
//                                   serves on the socket it inherits as fd 3 (LISTEN_FDS=1,
//                                   see sd_listen_fds(3)) instead of binding a port itself.
//
// Handlers: GET / (no loop), GET /work (the seeds' 1e7 loop), GET /work?iterations=N (N
// turns of the same loop). Every answer carries x-worker-slot (CLUSTER_WORKER_ID) and
// x-worker-pid, which the load generator reads for the per-worker share.
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');

const [mode, workers, port] = process.argv.slice(2);
const WORK = '/work?iterations=';

function handler(slot) {
  const headers = {
    'content-type': 'text/plain',
    'x-worker-slot': slot,
    'x-worker-pid': String(process.pid),
  };
  return (req, res) => {
    const url = req.url;
    if (url === '/work') {
      for (let i = 0; i < 1e7; i++); // the seeds' loop, as it stands
    } else if (url.startsWith(WORK)) {
      const n = Number(url.slice(WORK.length));
      if (!Number.isSafeInteger(n) || n < 0) {
        res.writeHead(400, { 'content-type': 'text/plain' });
        res.end('`iterations` must be a whole number\n');
        return;
      }
      for (let i = 0; i < n; i++);
    } else if (url !== '/') {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
      return;
    }
    res.writeHead(200, headers);
    res.end(`Handled by process ${process.pid}\n`);
  };
}

function serve() {
  return http.createServer(handler(process.env.CLUSTER_WORKER_ID ?? '0'));
}

function usage(why) {
  process.stderr.write(`server.js: ${why}\nusage: node server.js cluster N PORT | node server.js fd3\n`);
  process.exit(2);
}

if (mode === 'cluster' && cluster.isPrimary) {
  const count = Number(workers);
  if (!Number.isSafeInteger(count) || count < 1 || !(Number(port) > 0)) {
    usage(`cluster needs a worker count and a port, got ${workers} ${port}`);
  }
  // The default on Linux already; said here so NODE_CLUSTER_SCHED_POLICY cannot change it.
  cluster.schedulingPolicy = cluster.SCHED_RR;
  const listening = [];
  cluster.on('listening', (worker) => {
    listening.push(worker.process.pid);
    if (listening.length === count) {
      process.stdout.write(`${JSON.stringify({ listening })}\n`);
    }
  });
  cluster.on('exit', (worker, code, signal) => {
    process.stderr.write(`worker ${worker.process.pid} exited (${signal ?? code})\n`);
  });
  for (let slot = 0; slot < count; slot++) {
    cluster.fork({ CLUSTER_WORKER_ID: String(slot) });
  }
} else if (mode === 'cluster') {
  serve().listen(Number(port), '127.0.0.1');
} else if (mode === 'fd3') {
  if (process.env.LISTEN_FDS !== '1') {
    usage('fd3 expects its listening socket as fd 3 with LISTEN_FDS=1 (run it under `cluster run`)');
  }
  serve().listen({ fd: 3 });
} else {
  usage(`unknown mode ${mode}`);
}
