"""The playbook format: YAML spec, the line-keeping loader, the library of files, expressions."""
