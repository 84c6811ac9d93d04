/* stp--1.1--1.2.sql: upgrade of the stp extension from 1.1 to 1.2 */

\echo Use "ALTER EXTENSION stp UPDATE TO '1.2'" to load this file. \quit
