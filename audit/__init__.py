"""The audit: reconciles accepted messages against journal outcomes, above the stages (it may
read their public decision logic; no stage imports it)."""
