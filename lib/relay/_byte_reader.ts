/**
 * A buffered reader over a connection, for the relay's HTTP/1.1 front end and
 * its WebSocket frames: read more, look at what is buffered, consume it.
 * Bounded: it never holds more than its capacity, so a peer that sends an
 * endless header line or frame header hits a limit, not our memory.
 *
 * @module
 */

/** More bytes than a reader may hold (an over-long head or frame header). */
export class ReaderFull extends Error {
  /** The reader's capacity was reached. */
  constructor(capacity: number) {
    super(`more than ${capacity} bytes without the expected delimiter`);
    this.name = "ReaderFull";
  }
}

/** Reads that do not fill a grown buffer before it shrinks back (to the size `shrink` set). */
const QUIET_READS_BEFORE_SHRINKING = 16;

/** Bytes a reader starts with: most requests and frames fit, and idle connections hold little. */
const INITIAL_SIZE = 2048;

/** Buffered reads from `source`, at most `capacity` bytes held. */
export class ByteReader {
  #source: Deno.Conn;
  #buffer: Uint8Array;
  #capacity: number;
  #start = 0;
  #end = 0;
  /** The last read filled the buffer: more is likely waiting, so the next reads more. */
  #filled = false;
  /** The size {@linkcode ByteReader.shrink} asked for, which the buffer returns to after a burst. */
  #idleSize: number | null = null;
  /** Reads in a row that did not fill the buffer: the burst that grew it is over. */
  #quietReads = 0;
  /** A read started ahead ({@linkcode ByteReader.readAhead}): the next read takes its outcome. */
  #ahead: Promise<boolean> | null = null;

  /** Reads from `source`, holding at most `capacity` bytes (growing to it only when needed). */
  constructor(source: Deno.Conn, capacity: number) {
    this.#source = source;
    this.#capacity = capacity;
    this.#buffer = new Uint8Array(Math.min(INITIAL_SIZE, capacity));
  }

  /** The bytes read but not consumed yet (a view: valid until the next read or consume). */
  get buffered(): Uint8Array {
    return this.#buffer.subarray(this.#start, this.#end);
  }

  /** Drops the first `n` buffered bytes. */
  consume(n: number): void {
    this.#start += n;
    if (this.#start === this.#end) this.#start = this.#end = 0;
  }

  /**
   * Reads more bytes into the buffer; false at the end of the stream.
   * Throws {@linkcode ReaderFull} when the buffer is full of unconsumed bytes.
   */
  async fill(): Promise<boolean> {
    const ahead = this.#ahead;
    if (ahead !== null) {
      this.#ahead = null;
      return await ahead;
    }
    return await this.#read();
  }

  /** One read from the source into the buffer (what `fill` does when no read is under way). */
  async #read(): Promise<boolean> {
    if (
      this.#idleSize !== null && this.#end === this.#start &&
      this.#buffer.length > this.#idleSize && this.#quietReads >= QUIET_READS_BEFORE_SHRINKING
    ) {
      this.#buffer = new Uint8Array(this.#idleSize);
      this.#start = this.#end = 0;
    }
    if (this.#start > 0) {
      // Move what is left to the front: the buffer is small, the copy cheap.
      this.#buffer.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    if (this.#end === this.#buffer.length) {
      if (this.#buffer.length >= this.#capacity) throw new ReaderFull(this.#capacity);
      this.#grow();
    } else if (this.#filled && this.#buffer.length < this.#capacity) {
      this.#grow();
    }
    const free = this.#buffer.length - this.#end;
    const n = await this.#source.read(this.#buffer.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    this.#filled = n === free;
    this.#quietReads = this.#filled ? 0 : this.#quietReads + 1;
    return true;
  }

  /**
   * Whether the peer is still there, asked while nobody reads (a response
   * is being written): resolves false when it ended or reset its side.
   * With bytes buffered already (a pipelined request) it is there, and
   * nothing is read. Otherwise a read starts into the empty buffer; until it
   * settles, the next `fill` (and so every read, each of which fills first
   * from an empty buffer) waits for it and takes its outcome, so reads stay
   * in order and nothing moves the buffer under it.
   */
  readAhead(): Promise<boolean> {
    if (this.#end > this.#start) return Promise.resolve(true);
    if (this.#ahead === null) {
      const ahead = this.#read();
      this.#ahead = ahead;
      // Settled, its bytes are in the buffer (or the stream ended, which the
      // next read finds again): the next read ahead is a new read.
      const settled = () => {
        if (this.#ahead === ahead) this.#ahead = null;
      };
      ahead.then(settled, settled);
    }
    return this.#ahead.catch(() => false);
  }

  #grow(): void {
    const bigger = new Uint8Array(Math.min(this.#capacity, this.#buffer.length * 2));
    bigger.set(this.#buffer.subarray(0, this.#end));
    this.#buffer = bigger;
  }

  /**
   * Gives back what an idle reader does not need: the buffer becomes `size`
   * bytes (if what it holds fits), grows again only while reads keep
   * filling it, and returns to `size` once reads stop filling it. A relay
   * holds one reader per node, mostly idle.
   */
  shrink(size: number): void {
    this.#idleSize = size;
    // A read under way fills the buffer it was given: replaced under it, its
    // bytes would land in the old one. The next quiet read shrinks it.
    if (this.#ahead !== null) return;
    const held = this.#end - this.#start;
    if (this.#buffer.length <= size || held > size) return;
    const smaller = new Uint8Array(size);
    smaller.set(this.#buffer.subarray(this.#start, this.#end));
    this.#buffer = smaller;
    this.#start = 0;
    this.#end = held;
    this.#filled = false;
  }

  /**
   * Fills `out` whole: buffered bytes first, then straight from the source
   * (a large payload is not squeezed through the small buffer). False if the
   * stream ends first.
   */
  async readFull(out: Uint8Array): Promise<boolean> {
    if (this.#ahead !== null) await this.fill();
    const buffered = Math.min(out.length, this.#end - this.#start);
    out.set(this.#buffer.subarray(this.#start, this.#start + buffered));
    this.consume(buffered);
    for (let filled = buffered; filled < out.length;) {
      const n = await this.#source.read(out.subarray(filled));
      if (n === null) return false;
      filled += n;
    }
    return true;
  }

  /**
   * Exactly `n` bytes in a new array: buffered bytes first, the rest read
   * straight into it (large reads, not squeezed through the small buffer).
   * Null if the stream ends first.
   */
  async readExactly(n: number): Promise<Uint8Array | null> {
    const out = new Uint8Array(n);
    return (await this.readFull(out)) ? out : null;
  }

  /** Drops what is buffered, then reads and drops until the end of the stream or `max` bytes. */
  async discard(max: number): Promise<void> {
    if (this.#ahead !== null) await this.fill();
    let left = max - (this.#end - this.#start);
    this.consume(this.#end - this.#start);
    const scratch = new Uint8Array(64 * 1024);
    while (left > 0) {
      const n = await this.#source.read(scratch);
      if (n === null) return;
      left -= n;
    }
  }

  /**
   * Reads up to `max` bytes into a new array: buffered bytes first, else one
   * read from the source. Null at the end of the stream.
   */
  async readSome(max: number): Promise<Uint8Array | null> {
    if (this.#end === this.#start && !(await this.fill())) return null;
    const n = Math.min(max, this.#end - this.#start);
    const out = this.#buffer.slice(this.#start, this.#start + n);
    this.consume(n);
    return out;
  }
}
