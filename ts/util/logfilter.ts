/**
 * Log levels as ztunnel's admin `/logging` takes them (ztunnel src/admin.rs `validate_log_level`,
 * src/telemetry.rs `set_level`; the syntax is tracing-subscriber's `Targets`): a comma-separated
 * list of clauses, each a bare level (the default for everything) or `target=level` (one
 * component: inpod's loggers are named by their `component`, ts/util/log.ts). Levels are `off`,
 * `error`, `warn`, `info`, `debug` and `trace`. A later clause overrides an earlier one for the
 * same target. Pure: ts/util/log.ts applies a filter to the loggers.
 */

export const LEVELS = ['off', 'error', 'warn', 'info', 'debug', 'trace'] as const;
export type Level = (typeof LEVELS)[number];

export interface LogFilter {
  /** the level of every logger no target names */
  default: Level;
  /** component -> its level */
  targets: ReadonlyMap<string, Level>;
}

const isLevel = (s: string): s is Level => (LEVELS as readonly string[]).includes(s);
const TARGET = /^[A-Za-z0-9_:.-]+$/;

/**
 * The clauses of `spec`, or a string saying which one is invalid. As ztunnel's validation: a bare
 * target (tracing's "target at trace level") is refused, and so is an empty clause.
 */
export function parseClauses(spec: string): { target?: string; level: Level }[] | string {
  const out: { target?: string; level: Level }[] = [];
  for (const clause of spec.split(',')) {
    if (isLevel(clause)) {
      out.push({ level: clause });
      continue;
    }
    const eq = clause.indexOf('=');
    const target = clause.slice(0, eq);
    const level = clause.slice(eq + 1).toLowerCase();
    if (eq <= 0 || !TARGET.test(target) || !isLevel(level)) return `level ${clause} is invalid`;
    out.push({ target, level });
  }
  return out;
}

/** `base` with the clauses of `spec` applied in order (throws nothing: `spec` was parsed first). */
export function applyClauses(base: LogFilter, clauses: readonly { target?: string; level: Level }[]): LogFilter {
  const targets = new Map(base.targets);
  let dflt = base.default;
  for (const c of clauses) {
    if (c.target === undefined) dflt = c.level;
    else targets.set(c.target, c.level);
  }
  return { default: dflt, targets };
}

/** As tracing writes a filter: the targets (sorted), then the default level. */
export function formatFilter(f: LogFilter): string {
  return [...[...f.targets].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([t, l]) => `${t}=${l}`), f.default].join(',');
}

/** The level for a logger of `component`: its target's, else the default. */
export function levelFor(f: LogFilter, component: string | undefined): Level {
  return (component !== undefined ? f.targets.get(component) : undefined) ?? f.default;
}

/** pino's name for a level (`off` is pino's `silent`). */
export function pinoLevel(l: Level): string {
  return l === 'off' ? 'silent' : l;
}

/** A filter from INPOD_LOG_LEVEL (a level or a list of clauses); pino's own names `fatal` and `silent` read as `error` and `off`. */
export function initialFilter(env: string | undefined): LogFilter | null {
  const spec = (env ?? 'info').replace(/\bfatal\b/g, 'error').replace(/\bsilent\b/g, 'off');
  const clauses = parseClauses(spec);
  return typeof clauses === 'string' ? null : applyClauses({ default: 'info', targets: new Map() }, clauses);
}
