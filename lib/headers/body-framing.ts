import type { IncomingMessage } from 'node:http';

/** The request's headers say a body follows (HTTP/1.1 framing: a request without them has none). */
export function announcesBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/**
 * Why a response cannot be relayed as the upstream framed it: a transfer coding but one `chunked`
 * (the client would get the coded bytes re-framed as content), or `undefined`.
 */
export function unrelayableCoding(res: IncomingMessage): string | undefined {
  const coding = res.headers['transfer-encoding'];
  if (coding === undefined || coding.trim().toLowerCase() === 'chunked') return undefined;
  return `Transfer-Encoding: ${coding}`;
}
