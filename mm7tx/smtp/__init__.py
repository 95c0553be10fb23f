"""Mail out: the relay's settings, the pooled ESMTP client, the Maildir and
the choice between them."""
