-- A reservation's commit in one call: the home's usage row is locked first (the order
-- ferry_reserve takes), the reservation goes and the measured change is applied, in the
-- statement's own transaction. Before, the same three statements took a transaction of
-- their own and five round trips.
CREATE FUNCTION ferry_commit(p_home text, p_id bigint, p_add_bytes bigint, p_rm_bytes bigint,
                             p_add_files bigint, p_rm_files bigint)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM ferry_usage WHERE home = p_home FOR UPDATE;
    DELETE FROM ferry_reservations WHERE id = p_id;
    UPDATE ferry_usage SET
        used_bytes = LEAST(GREATEST(used_bytes::numeric + p_add_bytes::numeric
                                    - p_rm_bytes::numeric, 0), 9223372036854775807)::bigint,
        used_files = LEAST(GREATEST(used_files::numeric + p_add_files::numeric
                                    - p_rm_files::numeric, 0), 9223372036854775807)::bigint
    WHERE home = p_home AND counted;
END
$$;
