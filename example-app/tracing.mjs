// OpenTelemetry spans from viaduct's diagnostics channels: one client span per proxied request
// (HTTP or upgrade handshake), a child of the incoming request's context, with attributes after
// the HTTP semantic conventions, and its context sent upstream in `traceparent`. The README's
// tracing recipe; test/e2e/observability.test.mjs runs it against the SDK's in-memory exporter.
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { SpanKind, SpanStatusCode, context, propagation, trace } from '@opentelemetry/api';

/** Traces every request of `proxy` with `tracer`; returns a function that stops. */
export function traceProxy(proxy, tracer = trace.getTracer('viaduct')) {
  const spans = new WeakMap();

  const onStart = ({ route, req }) => {
    // The parent: a `traceparent` the client sent, else whatever is active (an HTTP server span).
    const parent = propagation.extract(context.active(), req.headers);
    const span = tracer.startSpan(
      req.method ?? 'GET',
      {
        kind: SpanKind.CLIENT,
        attributes: { 'http.request.method': req.method, 'viaduct.route': route },
      },
      parent,
    );
    spans.set(req, { span, context: trace.setSpan(parent, span), path: req.url });
  };

  // The upstream request carries the span's context, so the upstream's spans are its children; its
  // path is the one sent (after stripPrefix, pathRewrite and the upstream's own path).
  const onProxyReq = (proxyReq, req) => {
    const traced = spans.get(req);
    if (!traced) return;
    traced.path = proxyReq.path;
    propagation.inject(traced.context, proxyReq, {
      set: (carrier, key, value) => carrier.setHeader(key, value),
    });
  };

  // The upstream that answered is the last one tried: a request may have gone on to another.
  const onEnd = ({ req, upstream, status, error, tries, timings }) => {
    const traced = spans.get(req);
    if (!traced) return;
    spans.delete(req);
    const { span } = traced;
    if (upstream) {
      const target = new URL(upstream);
      span.setAttribute('server.address', target.hostname);
      span.setAttribute(
        'server.port',
        Number(target.port || (target.protocol === 'https:' ? 443 : 80)),
      );
      span.setAttribute('url.full', `${target.origin}${traced.path}`);
    }
    span.setAttribute('http.response.status_code', status);
    span.setAttribute('viaduct.tries', tries);
    if (timings.firstByte !== undefined)
      span.setAttribute('viaduct.first_byte_ms', timings.firstByte);
    // HTTP semantic conventions: a client span with a 4xx or 5xx answer is an error.
    if (error || status >= 400) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: error?.message });
      span.setAttribute('error.type', error?.code ?? String(status));
    }
    span.end();
  };

  subscribe('viaduct:request:start', onStart);
  subscribe('viaduct:request:end', onEnd);
  proxy.on('proxyReq', onProxyReq);
  return () => {
    unsubscribe('viaduct:request:start', onStart);
    unsubscribe('viaduct:request:end', onEnd);
    proxy.off('proxyReq', onProxyReq);
  };
}
