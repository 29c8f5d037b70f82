"""The `lowformer` commands, one module each (`lowformer.cli` assembles the group).

Shared pieces: `options` (option parsing, registry-backed choices and help, shared options),
`progress` (the rich Progress and logging handler), `render` (tables, lines, JSON), `errors`
(one `error:` line per failure). Heavy imports stay inside the command functions so that
`lowformer --help` stays fast.
"""
