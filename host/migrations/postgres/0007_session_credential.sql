-- Console sessions are bound to the credential they were made with (issue 21): an HMAC,
-- keyed with the session id that only the cookie holds, over the API token (or over "no
-- token" and the host process). Sessions from before have none and are no longer
-- accepted: everyone signs in again once.
ALTER TABLE console_sessions ADD COLUMN credential TEXT NOT NULL DEFAULT '';
