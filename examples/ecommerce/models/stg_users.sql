{{ config(materialized='view') }}

select
    cast(user_id as bigint)      as user_id,
    cast(signup_at as timestamp) as signup_at,
    cast(country as varchar)     as country,
    cast(channel as varchar)     as channel
from {{ source('shop', 'users') }}
where cast(signup_at as timestamp) < DATE '{{ var("as_of") }}' + INTERVAL 1 DAY
