"""records.search never refuses a record: a text too big for one tsvector is searched by its prefix

Revision ID: 2026_12_01_search_prefix
Revises: 2026_12_01_run_cancelled
Create Date: 2026-12-01

A tsvector holds at most 1 MB of lexemes and positions. The generated column was
`to_tsvector(title || content || author)`, so a record whose text made more than that
("string is too long for tsvector") could not be stored at all, and it failed its whole
chunk. Now a record whose text is over 64 KB has its vector built by
`records_search_vector`, which tries the whole text and, when the vector would be too
big, halves the text until it fits: the record is stored whole, and searched by the
longest prefix (in halvings) that fits. Below 64 KB no text can make a vector that big
(each byte of text makes a few bytes of vector at most), and the vector is built inline
as before: the function's exception block, a subtransaction, is paid only by big texts.

The upgrade rewrites the records table and rebuilds its GIN index (PostgreSQL 15 cannot
change a generated column's expression in place).
"""

from alembic import op

revision = "2026_12_01_search_prefix"
down_revision = "2026_12_01_run_cancelled"
branch_labels = None
depends_on = None

_DOCUMENT = "coalesce(title, '') || ' ' || coalesce(content, '') || ' ' || coalesce(author, '')"
INLINE_LIMIT_BYTES = 65536

_FUNCTION = """
CREATE FUNCTION records_search_vector(doc text) RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    keep integer := char_length(doc);
BEGIN
    LOOP
        BEGIN
            RETURN to_tsvector('english'::regconfig, left(doc, keep));
        EXCEPTION WHEN program_limit_exceeded THEN  -- string is too long for tsvector
            keep := keep / 2;
        END;
    END LOOP;
END
$$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)
    op.execute("ALTER TABLE records DROP COLUMN search")  # drops the records_search index with it
    op.execute(
        "ALTER TABLE records ADD COLUMN search tsvector GENERATED ALWAYS AS ("
        f" CASE WHEN octet_length({_DOCUMENT}) <= {INLINE_LIMIT_BYTES}"
        f" THEN to_tsvector('english', {_DOCUMENT})"
        f" ELSE records_search_vector({_DOCUMENT}) END) STORED"
    )
    op.execute("CREATE INDEX records_search ON records USING gin (search)")


def downgrade() -> None:
    # Fails ("string is too long for tsvector") while a record's whole text is too big for one vector.
    op.execute("ALTER TABLE records DROP COLUMN search")
    op.execute(
        f"ALTER TABLE records ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('english', {_DOCUMENT}))"
        " STORED"
    )
    op.execute("CREATE INDEX records_search ON records USING gin (search)")
    op.execute("DROP FUNCTION records_search_vector(text)")
