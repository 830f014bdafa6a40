/** The ports of a child's `READY <port> …` line (the upstream listens on three, a front on one). */
export async function readyPorts(child) {
  let output = '';
  for await (const chunk of child.stdout) {
    output += chunk;
    const match = /READY ([\d ]+)\n/.exec(output);
    if (match) return match[1].trim().split(' ').map(Number);
  }
  throw new Error(`process exited before READY: ${output}`);
}
