/**
 * A small typed event emitter whose listener table exists only once something listens. Node's
 * EventEmitter makes a table per instance up front (about 150 bytes), which a node agent holding
 * 100,000 handles pays 100,000 times for handles nobody listens to.
 */
type Listener<A extends unknown[]> = (...args: A) => void;
/** Listeners of every event in one table; each is called with its own event's arguments. */
type AnyListener = (...args: unknown[]) => void;

export class LazyEmitter<Events extends { [K in keyof Events]: unknown[] }> {
  private listeners: Map<keyof Events, AnyListener[]> | undefined;

  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): this {
    this.listeners ??= new Map();
    const list = this.listeners.get(event);
    if (list) list.push(fn as unknown as AnyListener);
    else this.listeners.set(event, [fn as unknown as AnyListener]);
    return this;
  }

  once<K extends keyof Events>(event: K, fn: Listener<Events[K]>): this {
    const wrapped = (...args: Events[K]) => {
      this.off(event, wrapped);
      fn(...args);
    };
    return this.on(event, wrapped);
  }

  off<K extends keyof Events>(event: K, fn: Listener<Events[K]>): this {
    const list = this.listeners?.get(event);
    const i = list ? list.indexOf(fn as unknown as AnyListener) : -1;
    if (i >= 0) list!.splice(i, 1);
    return this;
  }

  listenerCount(event: keyof Events): number {
    return this.listeners?.get(event)?.length ?? 0;
  }

  /** Call every listener of `event` in order; a listener that throws does not stop the others. */
  protected emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    const list = this.listeners?.get(event);
    if (!list) return;
    for (const fn of [...list]) {
      try {
        fn(...args);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
