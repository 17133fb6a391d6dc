"""Files in and out: checkpoints and weights, atomic writes, tables, output-folder preflight, checkpoint trust."""
