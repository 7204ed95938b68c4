"""Weight fetchers: one file per transport that brings a version into the backend."""
