/** An RFC 9110 token (§5.6.2): what a header name, or an unquoted parameter value, is made of. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

export function isToken(value: string): boolean {
  return TOKEN.test(value);
}
