// The middle of a list of figures (the mean of the two middle ones for an even count): what the
// bench scripts report per front and per pair, so that a noisy round weighs no more than another.
export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}
