const EVENT_STREAM = /^\s*text\/event-stream\s*(?:;|$)/i;

type Flushable = NodeJS.WritableStream & { flush?: () => void };

/** True for a `text/event-stream` response: Server-Sent Events, which must reach the client as written. */
export function isEventStream(contentType: string | undefined): boolean {
  return contentType !== undefined && EVENT_STREAM.test(contentType);
}

/**
 * Relays a response body to the client with backpressure: the upstream response pauses while the
 * client's buffer is full. One `drain` listener for the whole response, added at its first pause:
 * a compressing middleware in front (`compression()`) passes `on` through to its zlib stream but
 * not `removeListener`, so a `once` per pause would stay behind there, one more each time.
 *
 * An event stream written through such a middleware (it adds `res.flush`) is flushed after every
 * chunk, so that events are not held until the compressor's buffer fills; every other response
 * compresses as it would without a proxy.
 */
export function relayResponseBody(
  source: NodeJS.ReadableStream & { headers: { 'content-type'?: string } },
  destination: NodeJS.WritableStream,
): void {
  const { flush } = destination as Flushable;
  const flushEach = typeof flush === 'function' && isEventStream(source.headers['content-type']);
  let resumesOnDrain = false;
  source.on('data', (chunk: Buffer) => {
    if (!destination.write(chunk)) {
      source.pause();
      if (!resumesOnDrain) {
        resumesOnDrain = true;
        destination.on('drain', () => source.resume());
      }
    }
    if (flushEach) flush!.call(destination);
  });
  source.on('end', () => destination.end());
}
