/** Writes `chunk` to `destination`; when its buffer is full, pauses `source` until it drains. */
export function writeOrPause(source: NodeJS.ReadableStream, destination: NodeJS.WritableStream, chunk: Buffer): void {
  if (!destination.write(chunk)) {
    source.pause();
    destination.once('drain', () => source.resume());
  }
}
