"""Examples that ship with mm7tx, so a config file can bind them by dotted name.

``shortcode.ShortCodeMailboxes`` is the README's processor subclass;
``etc/mm7tx.conf`` binds it to a path.
"""
