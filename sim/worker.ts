/** A simulation worker thread: runs each seed it is sent and posts back what the seed adds up to. */
import { parentPort } from 'node:worker_threads';
import { runSchedule } from './scheduler.js';

parentPort?.on('message', (seed: number) => {
  void runSchedule(seed).then(({ history: _history, settings: _settings, ...result }) =>
    parentPort!.postMessage(result),
  );
});
