// The Vite recipe from the README: viaduct on Vite's own dev server. HTTP goes through Vite's
// middleware stack; upgrades are attached to the proxy itself (not to Vite's middlewares), so an
// upgrade no route takes — Vite's HMR socket — stays with Vite.
import { createProxy, attach } from 'viaduct';

export function viaductPlugin(options) {
  const proxy = createProxy(options);
  return {
    name: 'viaduct',
    proxy,
    configureServer(server) {
      server.middlewares.use(proxy);
      if (server.httpServer) {
        attach(server.httpServer, proxy);
        server.httpServer.once('close', () => proxy.close());
      }
    },
  };
}
