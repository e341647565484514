/** One pino root; modules take `child({component})`, pods `child({ns, pod, uid})`. */
import { pino, type Logger } from 'pino';

export type { Logger };

export const rootLogger: Logger = pino({
  level: process.env.INPOD_LOG_LEVEL ?? 'info',
  base: undefined,
  timestamp: pino.stdTimeFunctions.isoTime,
});

export function logger(component: string): Logger {
  return rootLogger.child({ component });
}
