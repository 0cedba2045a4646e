// A plugin written in JavaScript (componentize-js): the http role, its config, and a
// registry query through the host. Built by `cargo xtask plugins` with build.mjs.
import { query } from 'apiary:plugin/registry@0.1.0';
import { log } from 'apiary:plugin/log@0.1.0';

let greeting = 'Hello';

const json = (status, value) => ({
  status,
  headers: [['content-type', 'application/json']],
  body: new TextEncoder().encode(JSON.stringify(value)),
});

export const lifecycle = {
  init(config) {
    const c = JSON.parse(config);
    if (c.greeting !== undefined && typeof c.greeting !== 'string') {
      throw { tag: 'invalid-config', val: 'greeting must be a string' };
    }
    greeting = c.greeting ?? greeting;
    log('info', `js-hello ready with greeting ${greeting}`);
  },
};

export const http = {
  handle(req) {
    const hello = req.path.match(/^\/hello\/([^/]+)$/);
    if (req.method === 'GET' && hello) {
      return json(200, { message: `${greeting}, ${decodeURIComponent(hello[1])}!`, language: 'javascript' });
    }
    if (req.method === 'GET' && req.path === '/sessions') {
      try {
        const page = query({ tenant: 'default' }, 1, 100);
        return json(200, { count: Number(page.count), clients: page.items.map((s) => s.clientId) });
      } catch (e) {
        return json(403, { code: 'FORBIDDEN', message: String(e.payload?.val ?? e) });
      }
    }
    return json(404, { code: 'NOT_FOUND', message: `no route for ${req.path}` });
  },
};
