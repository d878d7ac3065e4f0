"""Who may call the server: API tokens and their roles (viewer < operator < admin).

    tokens        create, find, list and revoke tokens; only SHA-256 digests are stored
    sessions      console logins: a session per login, idle and absolute expiry, CSRF tokens
"""
