import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { addForwarding, isForwardingHeader, isTrusted, type ForwardedMode } from './forwarding';
import { applyToHeaders, type HeaderPolicy } from './header-policy';
import { connectionListed, isHopByHop } from './hop-by-hop';

/** What of a route's settings the upstream request's headers depend on. */
export interface RequestHeaderSettings {
  readonly forwarded: ForwardedMode;
  readonly trustProxy: boolean | undefined;
  readonly headers: { readonly request: HeaderPolicy };
}

/**
 * The headers sent upstream: the client's end-to-end headers (no hop-by-hop, no `Expect` — the
 * front already answered `100 Continue` — and forwarding headers only from a trusted peer), the
 * forwarding headers, the request policy, and for an upgrade `Connection`/`Upgrade` set explicitly.
 * Throws `EBADHEADER` when a rule function returns an unwritable value.
 */
export function upstreamHeaders(
  req: IncomingMessage,
  settings: RequestHeaderSettings,
  upgrade: boolean,
): OutgoingHttpHeaders {
  const incoming = req.headers;
  const listed = connectionListed(incoming.connection);
  const trusted = isTrusted(req, settings.trustProxy);
  const headers: OutgoingHttpHeaders = {};
  for (const name in incoming) {
    if (isHopByHop(name, listed) || name === 'expect' || (!trusted && isForwardingHeader(name)))
      continue;
    headers[name] = incoming[name];
  }
  // The body is re-framed on our hop: chunked when the client sent it without a length.
  if (incoming['transfer-encoding'] !== undefined && !upgrade)
    headers['transfer-encoding'] = 'chunked';
  addForwarding(headers, req, settings.forwarded);
  applyToHeaders(settings.headers.request, headers, req);
  if (upgrade) {
    headers.connection = 'upgrade';
    headers.upgrade = incoming.upgrade;
  }
  return headers;
}
