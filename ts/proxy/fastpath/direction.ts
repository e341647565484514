/**
 * One direction X -> Y of a relayed connection, as the fast path moves it: the states it passes
 * through and the only transitions allowed between them, in one table. Pure: the I/O each
 * transition stands for is splice.ts's. A transition the table does not allow is a defect and
 * throws (MeshError INPOD_ERR_FASTPATH); the splice resets that connection rather than guess.
 *
 * The paths a direction takes (TRANSITIONS below is the whole of it):
 *   spliced at once       idle -> kernel -> draining -> done
 *   refused by the kernel idle -> user -> done
 *   promoted              idle -> user -> paused -> kernel -> ...   (paused -> user: put off)
 *   handed back           kernel | draining -> handedBack -> tail -> done
 */
import { MeshError } from '../../util/errors.js';

export type DirState =
  /** nothing relays it yet */
  | 'idle'
  /** Node relays it (the shared userspace relay) */
  | 'user'
  /** a promotion stopped Node reading X; what was queued is copied on before the splice */
  | 'paused'
  /** spliced: the verdict program redirects every skb from X to Y */
  | 'kernel'
  /** X's FIN arrived; Y's write side is shut once every byte before it reached Y's socket */
  | 'draining'
  /** the program stopped redirecting (Y fell behind): Node relays the rest, after the kernel's bytes */
  | 'handedBack'
  /** Node read X's EOF on a handed-back direction: X is read directly until TCP's count is relayed */
  | 'tail'
  /** Y's write side is shut */
  | 'done';

export type DirEvent = 'relay' | 'pause' | 'resume' | 'splice' | 'fin' | 'throttle' | 'eof' | 'shut';

/** Every allowed transition: state -> event -> next state. Nothing else is. */
export const TRANSITIONS: { readonly [S in DirState]: { readonly [E in DirEvent]?: DirState } } = {
  idle: { relay: 'user', splice: 'kernel' },
  user: { pause: 'paused', shut: 'done' },
  paused: { resume: 'user', splice: 'kernel' },
  kernel: { fin: 'draining', throttle: 'handedBack' },
  draining: { shut: 'done', throttle: 'handedBack' },
  handedBack: { eof: 'tail' },
  tail: { shut: 'done' },
  done: {},
};

export class Direction {
  #state: DirState = 'idle';
  #spliced = false;

  /** `name` says which direction in errors ("client -> server"). */
  constructor(readonly name: string) {}

  get state(): DirState {
    return this.#state;
  }

  /** The kernel took this direction at some point (it may have handed it back since). */
  get spliced(): boolean {
    return this.#spliced;
  }

  /** Whether `e` is allowed now (for events that may race with the direction's own end). */
  can(e: DirEvent): boolean {
    return TRANSITIONS[this.#state][e] !== undefined;
  }

  /** Node starts relaying it. */
  relay(): void {
    this.#go('relay');
  }
  /** A promotion stops Node reading X. */
  pause(): void {
    this.#go('pause');
  }
  /** The promotion is put off, or the kernel did not take this direction: Node relays on. */
  resume(): void {
    this.#go('resume');
  }
  /** X joined the verdict map. */
  splice(): void {
    this.#go('splice');
    this.#spliced = true;
  }
  /** X's FIN arrived while spliced. */
  fin(): void {
    this.#go('fin');
  }
  /** The program stopped redirecting X. */
  throttle(): void {
    this.#go('throttle');
  }
  /** Node read X's EOF after the hand-back. */
  eof(): void {
    this.#go('eof');
  }
  /** Y's write side is shut: this direction is over. */
  shut(): void {
    this.#go('shut');
  }

  #go(e: DirEvent): void {
    const next = TRANSITIONS[this.#state][e];
    if (!next) throw new MeshError('INPOD_ERR_FASTPATH', `fast path: ${this.name} cannot take "${e}" while ${this.#state} (a defect in the proxy; the connection is reset)`);
    this.#state = next;
  }
}
