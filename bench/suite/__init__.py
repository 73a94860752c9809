"""A suite before anything runs: its keys, loading and validation, the cells it expands to, the zoo
recipes it names and the gate-rule grammar. Torch-free, so `bench validate` and `bench plan` start fast."""
