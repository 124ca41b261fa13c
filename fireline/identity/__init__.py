"""Who is acting: hashed API tokens, OpenID Connect, and signed decisions."""
