"""Auditing a labelled collection before its score is trusted: duplicates, leaks, likely label errors and
identities that may be one (docs/audit.md). Pure functions over hashes and neighbour lists, the item
table they describe, and the files and page an audit writes; `embedlab.pipelines.audit` runs them."""
