"""Security: the security loop's decisions, the message screen (pure), Redis start-up checks."""
