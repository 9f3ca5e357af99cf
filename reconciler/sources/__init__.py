"""Where revisions come from: a git repository (`git`) or a local directory
(`local`). Both hand the daemon immutable `Revision`s (`base`)."""
