/**
 * The commands of `safe-resume` and the options each takes: what shell completion offers, and what an
 * unknown option is compared with for "did you mean".
 */
import { parseArgs } from 'node:util';
import { UsageError } from './args.js';
import { helpFor } from './help.js';

const COMMON = ['dir', 'json', 'help'];

export const COMMAND_FLAGS: Record<string, string[]> = {
  up: [
    'replicas',
    'nodes',
    'apps',
    'store',
    'etcd-endpoints',
    'dir',
    'hold-ms',
    'pause-timeout-ms',
    'port',
    'interval-ms',
    'inspector-port',
    'stately',
    'stately-port',
    'tls-cert',
    'tls-key',
    'tls-ca',
    'nbd-tcp',
    'nbd-group',
    'config',
    'pretty',
    'no-color',
    'chaos',
    'for',
    'seed',
    'faults',
    'netns',
    'json',
    'help',
  ],
  status: [...COMMON, 'watch', 'target'],
  kill: COMMON,
  restart: COMMON,
  partition: [...COMMON, 'for'],
  heal: COMMON,
  dismount: [...COMMON, 'for'],
  'reboot-storage': COMMON,
  move: [...COMMON, 'to'],
  write: [...COMMON, 'as'],
  read: [...COMMON, 'offset', 'length', 'hex'],
  create: [...COMMON, 'size', 'node'],
  events: [...COMMON, 'target', 'since', 'follow'],
  explain: COMMON,
  grant: [...COMMON, 'principal', 'mode'],
  revoke: [...COMMON, 'principal'],
  export: [...COMMON, 'node'],
  logs: [...COMMON, 'follow'],
  down: [...COMMON, 'no-wait'],
  clean: COMMON,
  sim: ['seeds', 'from', 'seed', 'workers', 'json', 'help'],
  bench: ['json', 'smoke', 'only', 'help'],
  fuzz: ['frames', 'connections', 'seed', 'json', 'help'],
  replica: [
    'id',
    'store',
    'listen',
    'dir',
    'tls-cert',
    'tls-key',
    'tls-ca',
    'etcd-ca',
    'etcd-cert',
    'etcd-key',
    'help',
  ],
  credentials: ['node', 'principal', 'out', 'dir', 'json', 'help'],
  vm: [...COMMON, 'disk', 'stop-after', 'node', 'qemu', 'accept-modified'],
  completion: ['help'],
  help: [],
};

export const COMMANDS = Object.keys(COMMAND_FLAGS);

/** Every option of every command: what an unknown option of a command not listed is compared with. */
export const ALL_FLAGS = [...new Set(Object.values(COMMAND_FLAGS).flat())];

/** A bash completion script: commands first, then the command's options (and directories after --dir). */
export function bashCompletion(): string {
  const cases = Object.entries(COMMAND_FLAGS)
    .map(([cmd, flags]) => `    ${cmd}) opts=${JSON.stringify(flags.map((f) => `--${f}`).join(' '))} ;;`)
    .join('\n');
  return `# safe-resume completion for bash: eval "$(safe-resume completion bash)" (or save it in
# ~/.local/share/bash-completion/completions/safe-resume)
_safe_resume() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} opts=""
  COMPREPLY=()
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "${COMMANDS.join(' ')} --version" -- "$cur"))
    return 0
  fi
  case "$prev" in
    --dir|--config|--tls-cert|--tls-key|--tls-ca|--etcd-ca|--etcd-cert|--etcd-key|--netns|--out)
      COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
    --store) COMPREPLY=($(compgen -W "sqlite etcd memory" -- "$cur")); return 0 ;;
    --mode) COMPREPLY=($(compgen -W "read write" -- "$cur")); return 0 ;;
  esac
  case "\${COMP_WORDS[1]}" in
${cases}
  esac
  case "\${COMP_WORDS[1]}" in
    help) COMPREPLY=($(compgen -W "${COMMANDS.join(' ')}" -- "$cur")); return 0 ;;
    completion) [ "$COMP_CWORD" -eq 2 ] && COMPREPLY=($(compgen -W "bash zsh" -- "$cur")); return 0 ;;
    credentials) [ "$COMP_CWORD" -eq 2 ] && COMPREPLY=($(compgen -W "issue nbd-psk help" -- "$cur")) && return 0 ;;
  esac
  if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur")); fi
  return 0
}
complete -F _safe_resume safe-resume
`;
}

/** The same for zsh, through its bash completion layer. */
export function zshCompletion(): string {
  return `#compdef safe-resume
# safe-resume completion for zsh: eval "$(safe-resume completion zsh)" in ~/.zshrc
autoload -U +X compinit && compinit
autoload -U +X bashcompinit && bashcompinit
${bashCompletion()
  .split('\n')
  .filter((l) => !l.startsWith('#'))
  .join('\n')}`;
}

/** `completion bash|zsh`: a completion script for the shell. */
export function completion(argv: string[]): number {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) return (void process.stdout.write(helpFor('completion')), 0);
  const shell = positionals[0];
  if (positionals.length !== 1 || (shell !== 'bash' && shell !== 'zsh'))
    throw new UsageError(`completion takes bash or zsh${shell === undefined ? '' : `, not ${JSON.stringify(shell)}`}`);
  process.stdout.write(shell === 'bash' ? bashCompletion() : zshCompletion());
  return 0;
}
