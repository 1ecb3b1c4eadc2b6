"""What every package shares that is not a contract: one-line user errors, credential redaction,
whole-object storage, the --device words."""
