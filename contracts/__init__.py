"""What crosses the wire between gongji's services. Services import this package, never each other."""
