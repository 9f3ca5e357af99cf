"""Built-in providers. Each module holds one kind; `_fs` holds what the
filesystem providers share. They import only `reconciler.model`."""
