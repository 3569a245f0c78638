-- Plugin history (issue 23 §4): every load, replacement, unload and refusal of a handler
-- build, by the host that did it, so ops can tell which build paid an order and who signed
-- it long after the file is gone. Only appended to; never updated.
CREATE TABLE plugin_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- unix ms
    at          INTEGER NOT NULL,
    plugin_type TEXT    NOT NULL,
    -- loaded, replaced, unloaded, refused
    event       TEXT    NOT NULL,
    -- the `.wasm` file's SHA-256 (NULL for a refusal of a file that could not be read)
    sha256      TEXT,
    -- `principal SHA256:…` when signatures are checked
    signer      TEXT,
    version     TEXT,
    -- why a file was refused
    reason      TEXT,
    -- `{hostname}:{pid}` of the process that recorded it
    host        TEXT    NOT NULL
);

-- The history of one type, newest first, paged by id.
CREATE INDEX plugin_history_type ON plugin_history (plugin_type, id);
