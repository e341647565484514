/**
 * One pino root; modules take `child({component})`, pods `child({ns, pod, uid})`. The levels
 * follow a filter (ts/util/logfilter.ts: a default level and per-component ones, as ztunnel's
 * `/logging` sets them), from INPOD_LOG_LEVEL at start and `setLogFilter` later: every logger is
 * given the level of its component, so a child made after a change gets it too.
 */
import { pino, type Logger } from 'pino';
import { initialFilter, levelFor, pinoLevel, type LogFilter } from './logfilter.js';

export type { Logger };

/** What INPOD_LOG_LEVEL says (null: a pino level this grammar does not take, passed to pino as it is). */
const startFilter = initialFilter(process.env.INPOD_LOG_LEVEL);
let filter: LogFilter = startFilter ?? { default: 'info', targets: new Map() };
/** every logger with a component, weakly: per-pod children come and go */
const children = new Set<WeakRef<Logger>>();
const componentOf = (l: Logger): string | undefined => (l.bindings() as { component?: string }).component;

export const rootLogger: Logger = pino({
  level: startFilter ? pinoLevel(startFilter.default) : (process.env.INPOD_LOG_LEVEL ?? 'info'),
  base: undefined,
  timestamp: pino.stdTimeFunctions.isoTime,
  // called for every descendant (pino passes the option down)
  onChild: (child) => {
    const component = componentOf(child);
    if (component === undefined) return;
    children.add(new WeakRef(child));
    child.level = pinoLevel(levelFor(filter, component));
  },
});

export function logger(component: string): Logger {
  return rootLogger.child({ component });
}

/** The filter in force. */
export function logFilter(): LogFilter {
  return filter;
}

/** The filter INPOD_LOG_LEVEL set at start (`/logging?reset` goes back to it). */
export function initialLogFilter(): LogFilter {
  return startFilter ?? { default: 'info', targets: new Map() };
}

/** Applies `f` to the root and to every logger alive, each by its component. */
export function setLogFilter(f: LogFilter): void {
  filter = f;
  rootLogger.level = pinoLevel(f.default);
  for (const ref of children) {
    const l = ref.deref();
    if (!l) children.delete(ref);
    else l.level = pinoLevel(levelFor(f, componentOf(l)));
  }
}
