"""Manage ragchat's accounts (in DATABASE_URL, or DB_PATH: default database/auth.db) as
`ragchat users` does, runnable without installing the project (on Upsun: `upsun ssh -- python
create_password.py add alice`).

    python create_password.py                 print a new password and its argon2id hash
    python create_password.py add alice [--admin] [--password-stdin]
    python create_password.py reset alice [--password-stdin]
    python create_password.py disable alice | enable alice | delete alice
    python create_password.py list

Without --password-stdin a strong password is generated and printed once. Every error exits
non-zero.
"""

from ragchat.users_cli import users

if __name__ == "__main__":
    users()
