"""Background work leased through the store: batch lines and async chat tasks."""
