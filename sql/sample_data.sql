-- A few orders to look at; inserted only into an empty table.
INSERT INTO public.orders (customer_name, product_name, status)
SELECT v.customer_name, v.product_name, v.status
FROM (VALUES
    ('Harry',  'iPhone 17',       'pending'),
    ('Ada',    'ThinkPad X1',     'processing'),
    ('Grace',  'Kindle Scribe',   'shipped'),
    ('Linus',  'Mechanical keyboard', 'delivered'),
    ('Barbara','Standing desk',   'cancelled')
) AS v(customer_name, product_name, status)
WHERE NOT EXISTS (SELECT 1 FROM public.orders);
