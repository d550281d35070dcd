#!/bin/sh
# As the official image: protected mode off, so other containers reach it without a password
exec /usr/bin/redis-server "$@" --protected-mode no
