"""The national interface over HTTP (`gongji gateway`), in front of the bureau."""
