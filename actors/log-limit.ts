/** The log limiter is pure (it is given the time); it lives in core/ so the replica's core can use it. */
export { LogLimiter } from '../core/log-limit.js';
