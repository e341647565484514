/**
 * An HTTP/2 peer that writes raw frames (RFC 9113) over mutual TLS, for attacks a well-behaved
 * client library will not send: rapid reset, floods of SETTINGS/PING/CONTINUATION, more streams
 * than the server allows. It reads back frame headers, GOAWAY codes, response HEADERS, and the
 * SETTINGS and WINDOW_UPDATE frames decoded (what a peer announced). Header blocks are HPACK
 * literals without indexing (RFC 7541 6.2.2), no Huffman: enough for `:method CONNECT`,
 * `:authority` and plain headers.
 */
import tls from 'node:tls';
import type net from 'node:net';
import { until } from '../netns/lab.js';

export const FRAME = { DATA: 0, HEADERS: 1, PRIORITY: 2, RST_STREAM: 3, SETTINGS: 4, PUSH_PROMISE: 5, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8, CONTINUATION: 9 } as const;
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 } as const;
export const ERR = { NO_ERROR: 0, PROTOCOL_ERROR: 1, REFUSED_STREAM: 7, CANCEL: 8, ENHANCE_YOUR_CALM: 0xb } as const;
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/**
 * One frame (RFC 9113 4.1). `stream` is written as given, all 32 bits (a stream id, or one with the
 * reserved bit set on purpose); a `length` other than the payload's makes a frame that lies about
 * its size.
 */
export function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0), length = payload.length): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(length & 0xffffff, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream >>> 0, 5);
  return Buffer.concat([h, payload]);
}

/** HPACK: literal header field without indexing, name from the static table (index < 15). */
export function literal(staticIndex: number, value: string): Buffer {
  const v = Buffer.from(value);
  if (v.length > 126) throw new Error('value too long for this encoder');
  return Buffer.concat([Buffer.from([staticIndex, v.length]), v]);
}

/** HPACK: literal header field without indexing, new name (RFC 7541 6.2.2, second form). */
function literalNew(name: string, value: string): Buffer {
  const n = Buffer.from(name);
  const v = Buffer.from(value);
  if (n.length > 126 || v.length > 126) throw new Error('name or value too long for this encoder');
  return Buffer.concat([Buffer.from([0, n.length]), n, Buffer.from([v.length]), v]);
}

/** The header block of `CONNECT authority` (static table: 1 = :authority, 2 = :method), then `extra` headers. */
export function connectBlock(authority: string, extra: Record<string, string> = {}): Buffer {
  return Buffer.concat([literal(2, 'CONNECT'), literal(1, authority), ...Object.entries(extra).map(([k, v]) => literalNew(k, v))]);
}

/** SETTINGS parameters by their RFC 9113 6.5.2 identifiers. */
export const SETTING = { HEADER_TABLE_SIZE: 1, ENABLE_PUSH: 2, MAX_CONCURRENT_STREAMS: 3, INITIAL_WINDOW_SIZE: 4, MAX_FRAME_SIZE: 5, MAX_HEADER_LIST_SIZE: 6 } as const;

/** A SETTINGS payload as its (identifier, value) pairs, in the order sent. */
export function decodeSettings(payload: Buffer): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i + 6 <= payload.length; i += 6) out.push([payload.readUInt16BE(i), payload.readUInt32BE(i + 2)]);
  return out;
}

export interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

/** Splits a byte stream into HTTP/2 frames (after any preface the caller removed). */
export class FrameReader {
  #buf = Buffer.alloc(0);

  /** The frames completed by `d`, in order. */
  push(d: Buffer): Frame[] {
    this.#buf = Buffer.concat([this.#buf, d]);
    const out: Frame[] = [];
    while (this.#buf.length >= 9) {
      const len = this.#buf.readUIntBE(0, 3);
      if (this.#buf.length < 9 + len) break;
      out.push({ type: this.#buf[3]!, flags: this.#buf[4]!, stream: this.#buf.readUInt32BE(5) & 0x7fffffff, payload: Buffer.from(this.#buf.subarray(9, 9 + len)) });
      this.#buf = this.#buf.subarray(9 + len);
    }
    return out;
  }
}

export interface RawPeerOptions {
  socket: net.Socket;
  cert: string;
  key: string;
  ca: string;
}

/** What the server sent back, as counted by the peer. */
export interface Seen {
  frames: Record<number, number>;
  /** GOAWAY error codes, in order */
  goaway: number[];
  /** RST_STREAM error codes by stream */
  rst: Map<number, number>;
  /** streams that got a response HEADERS */
  responded: Set<number>;
  /** each SETTINGS frame (not ACK) the server sent, decoded */
  settings: [number, number][][];
  /** each WINDOW_UPDATE the server sent */
  windowUpdates: { stream: number; increment: number }[];
  closed: boolean;
}

export class RawH2Peer {
  readonly seen: Seen = { frames: {}, goaway: [], rst: new Map(), responded: new Set(), settings: [], windowUpdates: [], closed: false };
  /** answer the server's PINGs (a live peer does; a stalled one does not) */
  answerPings = false;
  readonly #frames = new FrameReader();
  #nextStream = 1;

  private constructor(readonly tls: tls.TLSSocket) {
    tls.on('data', (d: Buffer) => this.#read(d));
    // the server ending its side (FIN) is the end: the TCP socket under this one is half-open capable
    tls.on('end', () => (this.seen.closed = true));
    tls.on('close', () => (this.seen.closed = true));
    tls.on('error', () => {});
  }

  /** TLS with ALPN h2 over `socket`, then the client preface and an empty SETTINGS. */
  static async connect(o: RawPeerOptions, preface = true): Promise<RawH2Peer> {
    const t = tls.connect({ socket: o.socket, cert: o.cert, key: o.key, ca: o.ca, ALPNProtocols: ['h2'], minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
    await new Promise<void>((resolve, reject) => {
      t.once('secureConnect', () => resolve());
      t.once('error', reject);
    });
    const p = new RawH2Peer(t);
    if (preface) p.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
    return p;
  }

  /** Writes; false once the connection is gone (the server closed it). */
  write(b: Buffer): boolean {
    if (this.tls.destroyed || !this.tls.writable) return false;
    this.tls.write(b);
    return true;
  }

  /** A new client stream id (odd, increasing). */
  stream(): number {
    const id = this.#nextStream;
    this.#nextStream += 2;
    return id;
  }

  /** HEADERS (END_HEADERS) for CONNECT `authority` (and `extra` headers) on a new stream; returns its id. */
  connectStream(authority: string, extra: Record<string, string> = {}): { id: number; bytes: Buffer } {
    const id = this.stream();
    return { id, bytes: frame(FRAME.HEADERS, FLAG.END_HEADERS, id, connectBlock(authority, extra)) };
  }

  /** Resolves once `cond` holds or the connection closed; throws naming `what` after `ms`. */
  async until(what: string, cond: (s: Seen) => boolean, ms: number): Promise<void> {
    await until(what, () => this.seen.closed || cond(this.seen), { timeoutMs: ms, context: () => JSON.stringify({ ...this.seen, rst: this.seen.rst.size, responded: this.seen.responded.size }) });
  }

  close(): void {
    this.tls.destroy();
  }

  #read(d: Buffer): void {
    for (const { type, flags, stream, payload } of this.#frames.push(d)) {
      this.seen.frames[type] = (this.seen.frames[type] ?? 0) + 1;
      if (type === FRAME.GOAWAY && payload.length >= 8) this.seen.goaway.push(payload.readUInt32BE(4));
      else if (type === FRAME.RST_STREAM && payload.length >= 4) this.seen.rst.set(stream, payload.readUInt32BE(0));
      else if (type === FRAME.HEADERS) this.seen.responded.add(stream);
      else if (type === FRAME.WINDOW_UPDATE && payload.length >= 4) this.seen.windowUpdates.push({ stream, increment: payload.readUInt32BE(0) & 0x7fffffff });
      else if (type === FRAME.SETTINGS && !(flags & FLAG.ACK)) {
        this.seen.settings.push(decodeSettings(payload));
        this.write(frame(FRAME.SETTINGS, FLAG.ACK, 0));
      } else if (type === FRAME.PING && !(flags & FLAG.ACK) && this.answerPings) this.write(frame(FRAME.PING, FLAG.ACK, 0, payload));
    }
  }
}
