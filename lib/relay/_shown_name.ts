/**
 * A nickname or a session id as a log line shows it. Both are the nodes'
 * to choose (any printable text, spaces and semicolons too), so a name such
 * as `ops as peer; Node admin left` would read as log text of its own: such
 * a name is quoted (as JSON). Plain names stay as they are.
 *
 * @module
 */

/** What a name made of letters, digits and a few marks looks like. */
const PLAIN = /^[\p{L}\p{N}_.@+\-()]+$/u;

/** `name` for a log line: as it is when plain, else quoted. */
export function shownName(name: string): string {
  return PLAIN.test(name) ? name : JSON.stringify(name);
}
