/** What a fuzz run is asked to do, and what it reports. */

// ---------------------------------------------------------------- options and report

export interface FuzzOptions {
  /** Fuzz frames to send in all (default 100,000). */
  frames?: number;
  /** Fuzz connections to open (default 1,000); a few more are opened if early closes left frames unsent. */
  connections?: number;
  /** Connections open at a time (default 50). */
  concurrency?: number;
  /** Seed of every drawn frame (default: drawn, and reported). */
  seed?: number;
  /** The run stops by itself at this point (default 10 minutes). */
  deadlineMs?: number;
  /** How long a wave of post-authentication frames may wait for its answers (default 10 s). */
  answerTimeoutMs?: number;
  /** Quiet time after the fuzz, before the replica's memory is read again (default 1 s). */
  settleMs?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /** Self-test of the fuzzer: SIGKILL the replica once this many frames are sent; the report must say crash. */
  killReplicaAtFrame?: number;
  /** Stop early (Ctrl-C on the command line): the run cleans up and reports what it saw, marked interrupted. */
  signal?: AbortSignal;
  /**
   * Deeply nested JSON up to the frame limit (2 MiB) instead of 200 KB. Off by default: each such
   * frame stalls the replica for about a second (docs/fuzz.md, "Known finding").
   */
  heavy?: boolean;
}

export interface FuzzReport {
  /** Whether every check passed (`failures(report)` lists those that did not). */
  ok: boolean;
  seed: number;
  heavy: boolean;
  durationMs: number;
  timedOut: boolean;
  interrupted: boolean;
  /** Frames sent to the replica, before and after authentication. */
  framesSent: number;
  preAuthFrames: number;
  postAuthFrames: number;
  /** Connections opened (attempted), pre-authentication ones, authenticated sessions. */
  connections: number;
  preAuthConnections: number;
  sessions: number;
  concurrency: number;
  /** Connections the replica refused for a limit (an HTTP refusal, or a close/error before welcome that is not AUTH_FAILED). */
  refusedByLimit: number;
  /** Error frames received, by code (pre- and post-authentication). */
  errorsByCode: Record<string, number>;
  /** Other answers received (challenge, resumed). */
  otherAnswers: Record<string, number>;
  /** Connections the replica closed, by close code (4001 auth failed, 4002 too many bad frames, 1007 bad UTF-8, 1009 too big, ...). */
  closedByReplica: Record<string, number>;
  /** Post-authentication frames answered (an error frame or the predicted reply). */
  answered: number;
  /** Post-authentication frames sent around the replica's close of a session (4002 after too many bad frames, or a limit). */
  absorbedByClose: number;
  /** Post-authentication frames with no answer on a session the replica did not close with a code: must be 0. */
  unanswered: number;
  /** Answers whose code or type was not the one predicted for the frames sent: must be 0. */
  unpredictedAnswers: number;
  /** Pre-authentication garbage neither refused nor closed by the replica within 3 s: must be 0. */
  preAuthUnrefused: number;
  /** Sessions that asked for sealed frames (every frame then carries a MAC under the session key). */
  sealedSessions: number;
  /** Frames with a broken seal (a wrong MAC, a replayed frame, no MAC, a text frame) sent on sealed sessions. */
  brokenSeals: number;
  /** Sealed sessions the replica kept for 3 s after a broken seal: must be 0 (it drops them). */
  brokenSealsKept: number;
  /** Sessions the fuzzer could not authenticate though no limit refused them: must be 0. */
  handshakeFailures: number;
  /** Frames from the replica that did not pass the codec: must be 0. */
  invalidReplies: number;
  /** The replica process exited during the run: must be 0. */
  crashes: number;
  crash: string | undefined;
  /** A fresh session authenticated and got its pong after the fuzz. */
  aliveAtEnd: boolean;
  aliveDetail: string;
  legit: {
    /** Writes and reads (4 KiB each, bytes verified) that succeeded. */
    ops: number;
    failures: number;
    errors: string[];
    p99Ms: number;
    maxMs: number;
  };
  replica: {
    rssBeforeMiB: number | null;
    rssPeakMiB: number | null;
    rssAfterMiB: number | null;
    /** From the replica's own status report: bad frames it counted, sessions it opened. */
    badFramesCounted: number | null;
    sessionsOpened: number | null;
    /** Lines at level error or fatal in its log. */
    logErrors: number;
  };
  framesByKind: Record<string, number>;
  preAuthScenarios: Record<string, number>;
  /** What went wrong, in words (the first 30). */
  findings: string[];
}
