{{ config(materialized='view') }}

select
    cast(event_id as bigint)    as event_id,
    cast(user_id as bigint)     as user_id,
    cast(product_id as bigint)  as product_id,   -- NULL for searches
    cast(event_type as varchar) as event_type,
    cast(event_at as timestamp) as event_at
from {{ source('shop', 'events') }}
where cast(event_at as timestamp) < DATE '{{ var("as_of") }}' + INTERVAL 1 DAY
