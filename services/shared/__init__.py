"""What the three workers share: policy files, the broker, the store, logging."""
