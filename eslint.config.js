// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'bench/results/', 'inspector/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: { allowDefaultProject: ['eslint.config.js'] },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      // Terminal and log output is cleaned of control characters on purpose: those regexes name them.
      'no-control-regex': 'off',
      // An async function without an await still promises to reject rather than throw, and implements
      // an async interface (a store adapter, a transport, a test's callback) with the signature it has.
      '@typescript-eslint/require-await': 'off',
      // `_`-prefixed names are kept on purpose (a parameter an interface passes, a value destructured away).
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // Tests read what the CLI and the logs print as JSON and assert its shape with expect: the
      // assertion is the check, so the parsed value is not typed field by field first.
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      // expect(obj.method).toHaveBeenCalled() and friends pass methods unbound on purpose.
      '@typescript-eslint/unbound-method': 'off',
    },
  },
);
